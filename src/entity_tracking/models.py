"""The model variants of the paper and of the organism, and the one loader that serves them all.

Every model, LLaMA-7B or the CPU organism, is a Hugging Face `LlamaForCausalLM` directory or hub id,
optionally plus a LoRA adapter that is merged with peft, wrapped in a TransformerLens
`TransformerBridge` so every method uses TransformerLens hook names (``blocks.{l}.attn.hook_z``).

Merging Goat's adapter (rather than hooking an un-merged `PeftModel` as the authors did) keeps the
LoRA update of ``o_proj`` in every patched forward; ``authors_compat=True`` drops it again, which is
what the authors' hooks effectively ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch

# TransformerLens 4.3 and peft call a transformers attribute that transformers 5 deprecates; the warning
# is about their code, not the reader's, and would otherwise sit in every chapter's stored output.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

ORGANISM_DIR = Path(__file__).parent / "organism" / "checkpoints"
LLAMA_TOKENIZER = "hf-internal-testing/llama-tokenizer"  # the tokenizer the authors used for every model


@dataclass(frozen=True)
class ModelSpec:
    """Facts about one variant: where its weights come from and what the paper measured. Explained in chapter 2."""

    name: str
    base: str                        # hub id or local directory of a LlamaForCausalLM
    adapter: str | None = None       # LoRA adapter merged into the base with peft
    tokenizer: str | None = None     # defaults to the base's own tokenizer
    scale: str = "paper"             # "paper" (7B, GPU) or "organism" (tiny, CPU)
    dtype: str = "float16"           # default dtype on GPU; organisms always run in float32
    n_params: float = 6.74e9
    paper_accuracy: float | None = None   # 7-box accuracy in the paper's Table 1
    fine_tuning: str = ""
    analog_of: str | None = None     # the paper model an organism variant stands for
    needs_gpu: bool = True

    def memory_gb(self, dtype: str | None = None) -> float:
        """GPU memory the weights alone take (activations need a few GB more)."""
        nbytes = {"float32": 4, "float16": 2, "bfloat16": 2}[dtype or self.dtype]
        return self.n_params * nbytes / 2**30

    @property
    def weights(self) -> str:
        return self.base if self.adapter is None else f"{self.base} + LoRA {self.adapter}"


def _organism(name: str, analog: str, fine_tuning: str, base: str = "base", adapter: str | None = None,
              weights: str | None = None) -> ModelSpec:
    return ModelSpec(
        name=name,
        base=str(ORGANISM_DIR / (weights or base)),
        adapter=None if adapter is None else str(ORGANISM_DIR / adapter),
        scale="organism", dtype="float32", n_params=1e6, analog_of=analog, fine_tuning=fine_tuning,
        needs_gpu=False,
    )


PAPER_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("llama-7b", "huggyllama/llama-7b", tokenizer=LLAMA_TOKENIZER, paper_accuracy=0.66,
              fine_tuning="none (LLaMA-1 7B)"),
    ModelSpec("vicuna-7b", "AlekseyKorshuk/vicuna-7b", tokenizer=LLAMA_TOKENIZER, paper_accuracy=0.67,
              fine_tuning="full fine-tune on user-shared chat conversations"),
    ModelSpec("goat-7b", "huggyllama/llama-7b", adapter="tiedong/goat-lora-7b", tokenizer=LLAMA_TOKENIZER,
              paper_accuracy=0.82, fine_tuning="LoRA (r=64, alpha=64, q/k/v/o_proj) on synthetic arithmetic"),
    ModelSpec("float-7b", "nikhil07prakash/float-7b", tokenizer=LLAMA_TOKENIZER, paper_accuracy=0.82,
              fine_tuning="full fine-tune on the same synthetic arithmetic as Goat"),
)

ORGANISM_MODELS: tuple[ModelSpec, ...] = (
    _organism("organism-base", "llama-7b", "none: pre-trained on a synthetic language"),
    _organism("organism-vicuna", "vicuna-7b", "full fine-tune on conversation-like text", weights="vicuna"),
    _organism("organism-goat", "goat-7b", "LoRA on arithmetic with variables", adapter="goat"),
    _organism("organism-float", "float-7b", "full fine-tune on the same arithmetic", weights="float"),
)

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (*PAPER_MODELS, *ORGANISM_MODELS)}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do about it. Explained in chapter 2."""


class NoGPUError(ModelLoadError):
    pass


class HubAccessError(ModelLoadError):
    pass


class CorruptCheckpointError(ModelLoadError):
    pass


def resolve(model: str | ModelSpec) -> ModelSpec:
    """A registry name, a ModelSpec, or a local `LlamaForCausalLM` directory, as a ModelSpec. Explained in chapter 2."""
    if isinstance(model, ModelSpec):
        return model
    if model in REGISTRY:
        return REGISTRY[model]
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return ModelSpec(name=path.name, base=str(path), scale="local", dtype="float32", n_params=0,
                         needs_gpu=False, fine_tuning="local checkpoint")
    raise ValueError(
        f"unknown model {model!r}: use one of {sorted(REGISTRY)} or a local directory holding a "
        "Hugging Face LlamaForCausalLM (config.json + weights)"
    )


def _pick_device(spec: ModelSpec, device: str | torch.device | None, allow_cpu: bool) -> torch.device:
    cuda = torch.cuda.is_available()
    chosen = torch.device(device) if device is not None else torch.device("cuda" if cuda and spec.needs_gpu else "cpu")
    if spec.needs_gpu and not allow_cpu:
        need = spec.memory_gb()
        if chosen.type != "cuda" or not cuda:
            raise NoGPUError(
                f"{spec.name} has {spec.n_params / 1e9:.1f}B parameters and needs a CUDA GPU with at least "
                f"{need + 2:.0f} GB of memory in {spec.dtype} ({spec.memory_gb('float32') + 4:.0f} GB in float32); "
                "none is available here. Run the organism variants on CPU (e.g. 'organism-base'), or open the "
                "chapter on Colab with a GPU runtime (Runtime > Change runtime type). To wait for a CPU run "
                "anyway, pass allow_cpu=True."
            )
        total = torch.cuda.get_device_properties(chosen).total_memory / 2**30
        if total < need + 1:
            raise NoGPUError(
                f"{spec.name} needs about {need + 2:.0f} GB of GPU memory in {spec.dtype}, but "
                f"{torch.cuda.get_device_name(chosen)} has {total:.0f} GB. Use a larger GPU or an organism variant."
            )
    return chosen


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(directory: str | Path) -> dict | None:
    """Check the sha256 of every file a ``manifest.json`` lists; returns the manifest (or None).
    Explained in chapter 2."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not directory.is_dir():
        raise CorruptCheckpointError(
            f"checkpoint directory {directory} is missing; for an organism variant rebuild it with "
            f"`python -m entity_tracking.organism train --variant {directory.name}` or restore it with git"
        )
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    for filename, expected in manifest.get("sha256", {}).items():
        path = directory / filename
        if not path.is_file():
            raise CorruptCheckpointError(
                f"{path} is missing (listed in {manifest_path}); restore it with `git checkout -- {path}` "
                f"or retrain with `python -m entity_tracking.organism train --variant {directory.name}`"
            )
        actual = _sha256(path)
        if actual != expected:
            raise CorruptCheckpointError(
                f"{path} is corrupt: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…; "
                f"restore it with `git checkout -- {path}` or retrain the variant"
            )
    return manifest


def _hub_error(spec: ModelSpec, what: str, err: Exception) -> HubAccessError:
    return HubAccessError(
        f"could not load {what} for {spec.name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
        "If it is a gated or private hub repository, accept its licence on huggingface.co and log in "
        "(`hf auth login`, or set HF_TOKEN); if this machine is offline, download the weights elsewhere "
        "and pass the local directory instead (e.g. dataclasses.replace(REGISTRY[name], base=DIR))."
    )


def _from_pretrained(loader, source: str, spec: ModelSpec, what: str, **kwargs):
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return loader(source, **kwargs)
    except (OSError, HfHubHTTPError, ValueError) as err:
        if Path(source).exists() and not isinstance(err, OSError):
            raise
        raise _hub_error(spec, what, err) from err


def _merge_lora(hf_model, adapter: str, spec: ModelSpec, drop_o_proj: bool):
    """Merge a LoRA adapter into the base weights. ``drop_o_proj`` zeroes the o_proj update first,
    reproducing the authors' hooks, which rebuilt every head output with the base o_proj weight."""
    from peft import PeftModel

    if Path(adapter).exists():
        verify_checkpoint(adapter)
    try:
        peft_model = PeftModel.from_pretrained(hf_model, adapter)
    except (OSError, ValueError) as err:
        if Path(adapter).exists() and isinstance(err, ValueError):
            raise
        raise _hub_error(spec, "the LoRA adapter", err) from err
    if drop_o_proj:
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "o_proj" in name and "lora_B" in name:
                    param.zero_()
    return peft_model.merge_and_unload()


@dataclass
class LoadedModel:
    """A hooked model with its tokenizer and facts. ``model`` is a TransformerLens TransformerBridge.
    Explained in chapter 2."""

    model: object
    tokenizer: object
    spec: ModelSpec
    device: torch.device
    authors_compat: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name + (" (authors' hooks)" if self.authors_compat and self.spec.adapter else "")

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    @property
    def n_heads(self) -> int:
        return self.model.cfg.n_heads

    @property
    def d_head(self) -> int:
        return self.model.cfg.d_head

    @cached_property
    def objects(self) -> tuple[str, ...]:
        """The paper's objects that this tokenizer writes as one token (prompts need that)."""
        from .data import OBJECTS, single_token_words

        return tuple(single_token_words(OBJECTS, self.tokenizer))

    @property
    def fingerprint(self) -> str:
        """What names these weights in stored results (`variants.fingerprint`), computed once."""
        from .variants import fingerprint

        return fingerprint(self)

    def examples(self, task, n_samples: int | None = None):
        """The prompts of a `data.TaskConfig` in this model's vocabulary."""
        return task.examples(self.objects, n_samples)

    def batch(self, task, n_samples: int | None = None):
        """The prompts of a `data.TaskConfig`, tokenised on this model's device."""
        return self.tokenize(self.examples(task, n_samples))

    def dataset(self, n_boxes: int = 7, n_samples: int = 500, seed: int = 0):
        """The task's prompts in this model's vocabulary."""
        from .data import make_dataset

        return make_dataset(n_boxes, n_samples, seed, objects=self.objects)

    def tokenize(self, examples, **kwargs):
        from .data import tokenize_examples

        return tokenize_examples(examples, self.tokenizer, **kwargs).to(self.device)


def load_model(model: str | ModelSpec, device: str | torch.device | None = None, dtype: str | None = None,
               authors_compat: bool = False, allow_cpu: bool = False) -> LoadedModel:
    """Load a variant by registry name, spec or local directory, as a TransformerLens bridge.

    Raises a `ModelLoadError` subclass that says what to do when the weights are missing, corrupt,
    gated, or too large for this machine. Explained in chapter 2."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from transformers.utils import logging as hf_logging

    spec = resolve(model)
    chosen = _pick_device(spec, device, allow_cpu)
    hf_logging.disable_progress_bar()  # per-shard bars would flood notebooks and the book
    dtype = dtype or (spec.dtype if chosen.type == "cuda" else "float32")
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    if Path(spec.base).exists() or spec.scale == "organism":
        verify_checkpoint(spec.base)
    try:
        hf_model = _from_pretrained(LlamaForCausalLM.from_pretrained, spec.base, spec, "the weights",
                                    dtype=torch_dtype, attn_implementation="eager")
        if spec.adapter is not None:
            hf_model = _merge_lora(hf_model, spec.adapter, spec, drop_o_proj=authors_compat)
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, spec.tokenizer or spec.base, spec, "the tokenizer")
        hf_model = hf_model.to(chosen).eval()
    except torch.cuda.OutOfMemoryError as err:
        raise ModelLoadError(
            f"out of GPU memory while loading {spec.name} ({spec.memory_gb(dtype):.0f} GB of weights in {dtype}); "
            "free the GPU (restart the runtime, or `del` other models and call torch.cuda.empty_cache()), "
            "or load in float16"
        ) from err
    for param in hf_model.parameters():
        param.requires_grad_(False)
    bridge = _bridge(hf_model, tokenizer, chosen)
    return LoadedModel(bridge, tokenizer, spec, chosen, authors_compat=authors_compat)


def _bridge(hf_model, tokenizer, device):
    """Wrap a loaded `LlamaForCausalLM` (no copy). The name only picks the LLaMA adapter of
    TransformerLens; the shapes come from ``hf_model.config``, so tiny models work too."""
    import logging

    from transformer_lens import TransformerBridge

    quiet = logging.getLogger("transformer_lens")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        bridge = TransformerBridge.boot_transformers("llama-7b-hf", hf_model=hf_model, tokenizer=tokenizer,
                                                     device=str(device))
    finally:
        quiet.setLevel(level)
    return bridge.eval()


def gpu_memory_gb() -> float:
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def variant_availability() -> dict[str, str | None]:
    """Each variant mapped to None if it can run on this machine, else the reason it cannot. Explained in chapter 2."""
    gpu = gpu_memory_gb()
    out: dict[str, str | None] = {}
    for name, spec in REGISTRY.items():
        if spec.needs_gpu and gpu < spec.memory_gb() + 1:
            out[name] = (f"needs a CUDA GPU with ≥{spec.memory_gb() + 2:.0f} GB" +
                         (f" (this one has {gpu:.0f} GB)" if gpu else " (none found)"))
        elif spec.scale == "organism" and not (Path(spec.base) / "config.json").is_file():
            out[name] = "checkpoint not built yet (python -m entity_tracking.organism train)"
        elif spec.scale == "organism" and spec.adapter and not (Path(spec.adapter) / "adapter_config.json").is_file():
            out[name] = "LoRA adapter not built yet (python -m entity_tracking.organism train)"
        else:
            out[name] = None
    return out


def available_variants() -> list[str]:
    return [name for name, why in variant_availability().items() if why is None]


def default_variant() -> str:
    """The variant a chapter runs by default: LLaMA-7B on a big enough GPU, else the organism.
    Explained in chapter 2."""
    return "llama-7b" if variant_availability().get("llama-7b") is None else "organism-base"


def with_local_weights(name: str, base: str | Path, adapter: str | Path | None = None,
                       tokenizer: str | Path | None = None, needs_gpu: bool | None = None) -> ModelSpec:
    """A registry entry pointed at local files (weights downloaded elsewhere, or tests' tiny models).
    Explained in chapter 2."""
    spec = REGISTRY[name] if name in REGISTRY else resolve(name)
    changes = {"base": str(base), "tokenizer": str(tokenizer or base)}
    if adapter is not None or spec.adapter is not None:
        changes["adapter"] = None if adapter is None else str(adapter)
    if needs_gpu is not None:
        changes["needs_gpu"] = needs_gpu
    return replace(spec, **changes)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
