"""The reference transcriber (`audiohook-gateway transcribe`): the gateway's Transcription
Connector consumer, offline and small enough to read.

It follows the events stream with a consumer group (one member per session), reads each
transcription-mode session's stream in order, cuts every channel into utterances with a voice
activity detector, recognises them (PocketSphinx by default: `recognizer.py` says how to plug
another service in) and sends each final transcript back as one `event`; after the client's
`close` it flushes what is left and sends `finish`, so `closed` follows the last transcript
(docs/protocol.md §3.4, §4.6, §5.5).

Modules: audio.py (decode, resample), vad.py (utterances on the session timeline),
recognizer.py (the recogniser protocol, PocketSphinx), entities.py (transcript entities),
session.py (one session's stream entries in, utterances out), follow.py (Redis and the
control plane), cli.py (the command).
"""
