"""Tools around the gateway, not part of serving: `consume` (each session's audio from Redis
to WAV files) and WAV reading and writing. The Genesys-like client (`app.client`) and the
benchmarks (`app.bench`) are tools too, in their own packages. Nothing on the serving path
(`app.server` and below) imports a tool; `app.cli` imports each one only for its own command.
"""
