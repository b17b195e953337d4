"""Encoders, the attention decoder, the proposal network and the whole captioner."""
