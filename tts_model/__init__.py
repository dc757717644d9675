"""CosyVoice2 model code shared by the deployments: loading, the random-weight twin, and the
pure per-stage logic (text frontend, speech-token decoding, token-to-waveform) built on the
upstream `cosyvoice` modules."""
