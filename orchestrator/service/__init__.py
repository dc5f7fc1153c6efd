"""Running the daemon as a service: systemd, launchd, a Windows service (NSSM) or scheduled task.

``units`` renders what each service manager needs (pure); ``manager`` writes it
and runs the manager's commands, or prints both (``--print``).
"""
