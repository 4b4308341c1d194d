#!/usr/bin/env bash
# Makes two_speakers.wav, the stereo call of the transcriber's end-to-end test: 8 kHz µ-law,
# channel 0 the external party, channel 1 the agent, each utterance placed at a known start
# (the test's expected segments). Needs Debian's espeak-ng and sox; run once, commit the WAV:
#   apt-get install -y espeak-ng sox && tests/data/make_two_speakers_wav.sh
set -euo pipefail
cd "$(dirname "$0")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# say NAME START_SECONDS TEXT: the utterance, silence-trimmed, delayed to START_SECONDS.
say() {
    espeak-ng -v en-us -s 150 -w "$work/$1-raw.wav" "$3"
    sox "$work/$1-raw.wav" -r 8000 -c 1 -b 16 "$work/$1-8k.wav" \
        silence 1 0.01 1% reverse silence 1 0.01 1% reverse
    sox "$work/$1-8k.wav" "$work/$1.wav" pad "$2"
    printf '%s starts %s s, lasts %s s\n' "$1" "$2" "$(soxi -D "$work/$1-8k.wav")"
}

say hello 0.5 "hello there"
say morning 2.5 "good morning"
say thanks 4.8 "thank you for calling"

length=7.5
sox -m -v 1 "$work/hello.wav" -v 1 "$work/morning.wav" "$work/external.wav"
sox "$work/external.wav" "$work/external-full.wav" pad 0 "$length" trim 0 "$length"
sox "$work/thanks.wav" "$work/internal-full.wav" pad 0 "$length" trim 0 "$length"
sox -M "$work/external-full.wav" "$work/internal-full.wav" -e u-law -b 8 two_speakers.wav
soxi two_speakers.wav
