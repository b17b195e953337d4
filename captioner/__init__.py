"""captioner: hard-attention image captioning trained with wake-sleep importance weighting (WS-RAM)."""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a saved captioner folder (config.json, model.safetensors, decoding.json)."""
    from captioner.models.captioner import CaptionModel

    return CaptionModel.from_pretrained(path, device=device)


__all__ = ["load", "__version__"]
