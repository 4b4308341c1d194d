"""Redis access, below everything that uses Redis: the client factory, every key name, RESP
packing and pipelined round trips, the embedded development server and the readiness health
check. Nothing here imports the publisher, the control plane, security or the transport.

Inside this package `redis` (absolute import) is still redis-py: `app.redis` is only ever
imported by its full name.
"""
