"""The HTTP layer (quart-trio on hypercorn): a client of the supervisor.

The access gate and the end-of-exchange middleware wrap the one app; the
OpenAI proxy, the admin API, the websocket feeds and the dashboard are its routes.
"""
