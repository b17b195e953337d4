"""captioner: hard-attention image captioning trained with wake-sleep importance weighting (WS-RAM)."""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """Load a saved captioner: a folder (config.json, model.safetensors, decoding.json) or a Hugging
    Face Hub repository id. `model.caption(images, **decoding)` then captions images."""
    from captioner.models.captioner import CaptionModel

    return CaptionModel.from_pretrained(str(path), device=device)


__all__ = ["load", "__version__"]
