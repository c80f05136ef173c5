"""Modality packages: each registers its CAP encoders in :data:`capsmm.encoder.ENCODERS` on import."""
