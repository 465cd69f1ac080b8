"""Audio on CPU workers: decoding and resampling (decode), voice activity (vad), and cutting speech
into segments and back (segment)."""
