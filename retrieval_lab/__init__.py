"""retrieval_lab: a config-driven lab for dense text retrieval research."""

from omegaconf import OmegaConf

__version__ = "0.1.0"


def device_for(accelerator: str) -> str:
    """The torch device of a Lightning ``trainer.accelerator`` (the ``${device_for:...}`` resolver the configs
    use so that evaluation runs where training did): gpu/cuda -> cuda, mps -> mps, auto -> cuda where one is
    visible, anything else -> cpu.

    >>> device_for("gpu"), device_for("cpu")
    ('cuda', 'cpu')
    """
    accelerator = str(accelerator).lower()
    if accelerator == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return {"gpu": "cuda", "cuda": "cuda", "mps": "mps"}.get(accelerator, "cpu")


OmegaConf.register_new_resolver("device_for", device_for, replace=True)
