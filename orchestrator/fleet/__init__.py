"""More than one machine: what each daemon publishes for a load balancer, and the balancers' configuration."""
