"""The method-adapter interface, and the contract between tasks and methods.

An adapter wraps a backbone for one task's classes. It decides which parameters
train (freezing everything else), how class embeddings are produced, and what its
saveable artifact is. The runner knows no method by name: everything it needs is
here.

The contract, written down on both sides:

- each task says which hooks it calls: a ``hooks`` ClassVar on the task class,
  naming hooks of the adapter interface it drives (``MethodAdapter.HOOKS`` here,
  ``GenerationAdapter.HOOKS`` in ``genmethods/base.py``);
- each method says which tasks it serves: its ``tasks`` ClassVar, by which
  ``@METHODS.register`` files it (one name, one entry, one class per task);
- ``check_contract`` (run by ``resolve_method``, so by every task's ``validate``
  before anything runs) refuses, in one line, a method that does not serve the task
  and a method that overrides a hook the task never calls (that behaviour would be
  silently ignored while its parameters still counted as trained).

Which hooks the tasks call (``tunebench list methods`` prints the method × task matrix):

    fewshot-cls  forward (training) and embed_images + scorer (evaluation); by default
                 embed_images projects, normalises and calls refine_image_embeddings,
                 and scorer scores through class_embeddings, head and logit_scale
    base2new     the same, plus new_class_scorer(classes) for the unseen half
    detect       class_embeddings, and refine_image_embeddings on every region
                 embedding (the detector's own projection, already normalised)
    align        none: it trains what the method unfroze in the towers, through the
                 backbone, and scores with the backbone

``class_embeddings`` and ``new_class_scorer`` are required of every method (each
method's ``new_class_scorer`` docstring says what it does on classes it never
trained on); the others have defaults. To add a method see docs/adding-a-method.md:
one module in ``tunebench/methods/`` with a config dataclass and a subclass of
``MethodAdapter`` decorated with ``@METHODS.register("name")``. The package imports
every module in its folder, so no other file changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from tunebench.config import INITS
from tunebench.display import Display
from tunebench.errors import ConfigError
from tunebench.models.base import VisionLanguageBackbone, count_parameters
from tunebench.registry import METHODS, TASKS

# Logits (N, C) from L2-normalised joint-space image embeddings (N, D). A scorer holds
# whatever text side it needs, computed once when it was made.
Scorer = Callable[[torch.Tensor], torch.Tensor]


def hyperparameter(default, help: str):
    """A config field with a help text (shown by ``tunebench list --verbose``)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def learning_rate(default: float, note: str = ""):
    """The ``lr`` field of a method's config, with its own default."""
    return hyperparameter(default, "peak learning rate (AdamW, cosine schedule)" + (f"; {note}" if note else ""))


@dataclass
class MethodConfig:
    """Settings every method has; subclasses add their own fields."""

    lr: float = learning_rate(1e-3)
    weight_decay: float = hyperparameter(0.0, "AdamW weight decay")

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class ClassPrompts:
    """What a classification task tells an adapter about its classes, and the prompt
    information every method's class representation starts from (``init``, one value
    per sweep: ``RunConfig.init``). Methods read their start from here, so that no
    method starts from more text than another: single is ``templates[0]``, ensemble
    every template (``methods/prompts.py: start_embeddings`` encodes it)."""

    classnames: tuple[str, ...]
    templates: tuple[str, ...]  # each with one "{}"; templates[0] is the single-prompt choice
    init: str = "single"  # one of config.INITS

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")

    @property
    def start_templates(self) -> tuple[str, ...]:
        return self.templates if self.init == "ensemble" else self.templates[:1]

    def start_texts(self) -> list[list[str]]:
        """Each class's start prompts: one per start template, the class name in its slot."""
        return [[t.format(c) for t in self.start_templates] for c in self.classnames]


class TrainableParts:
    """What the runner asks every adapter (classification, detection, generation) about
    its parameters. Mixed into ``nn.Module`` subclasses that hold a ``config`` with
    ``lr`` and ``weight_decay``; an adapter freezes what it does not train."""

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_count(self) -> int:
        return count_parameters(p for _, p in self.trainable_named_parameters())

    def total_count(self) -> int:
        """The wrapped model plus anything the method adds (bottlenecks, prompts, heads),
        each shared tensor once."""
        return count_parameters(self.parameters())

    def optimizer_groups(self) -> list[dict]:
        params = [p for _, p in self.trainable_named_parameters()]
        return [{"params": params, "lr": self.config.lr, "weight_decay": self.config.weight_decay}]

    # ---- chaining (bench/chain.py): a run that starts from another run's result ----------
    # The methods whose finished runs this one can start from (``init_from``); () for a
    # method that cannot. A method that can implements ``start_from``.
    chains_from: ClassVar[tuple[str, ...]] = ()

    def start_from(self, tensors: dict[str, torch.Tensor]) -> None:
        """Start from another run's result: ``tensors`` are what the source method's
        ``chain_tensors`` made of that run's artifact. The task calls it once, after the
        adapter is built and moved to its device, inside the train clock; what it fixes
        is kept in persistent buffers, which ``artifact`` saves."""
        raise ConfigError(f"method {type(self).__name__} cannot start from another run (init_from)")

    @classmethod
    def chain_tensors(cls, artifact: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What a finished run of this method hands the runs that start from it, read from
        its saved ``artifact``; a method that is no source has none."""
        raise ConfigError(f"runs of {cls.__name__} are no source for other runs (init_from)")

    def held_tensors(self) -> dict[str, torch.Tensor]:
        """The method's own persistent buffers (outside the wrapped model): tensors its
        result depends on that do not train, such as what ``start_from`` fixed."""
        state = self.state_dict(keep_vars=True)
        wrapped = ("backbone.", "model.")
        return {n: b.detach().cpu().contiguous() for n, b in self.named_buffers()
                if n in state and not n.startswith(wrapped)}

    def artifact(self) -> dict[str, torch.Tensor]:
        """What must be saved to reproduce the tuned model on top of the backbone: the
        trained tensors (class vectors, K/V weights, a whole tower or UNet), and those a
        start from another run fixed (``held_tensors``)."""
        return {**{n: p.detach().cpu().contiguous() for n, p in self.trainable_named_parameters()},
                **self.held_tensors()}

    def exports(self) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
        """What the run learned in the form its ecosystem loads (a diffusers
        ``learned_embeds.safetensors``, ...): name -> (tensors, safetensors metadata).
        The runner writes each beside the artifact when it saves artifacts; none here."""
        return {}


class MethodAdapter(TrainableParts, nn.Module, ABC):
    """Base class. Subclasses create their parameters in ``__init__`` after super()."""

    summary: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # The tasks this method serves (``@METHODS.register`` files it under each). By
    # default those that score with class embeddings; methods that tune tower weights
    # add ``align``; methods without one (C, D) class-embedding matrix drop ``detect``.
    tasks: ClassVar[tuple[str, ...]] = ("fewshot-cls", "base2new", "detect")
    # The hooks a task may call (a task's ``hooks`` names the ones it does).
    HOOKS: ClassVar[tuple[str, ...]] = ("class_embeddings", "new_class_scorer", "forward", "embed_images",
                                        "refine_image_embeddings", "scorer", "head", "logit_scale")
    # The starts (config.INITS) the method can express. A method that cannot start from
    # an ensemble of templates (CoOp's one shared context) lists "single" alone, and a
    # sweep asking for another is refused before anything runs (check_init).
    inits: ClassVar[tuple[str, ...]] = INITS
    # False for methods that use no training data (zero-shot): the sweep then runs
    # them once per dataset instead of once per shot count and seed.
    trains: ClassVar[bool] = True
    # A config field that a method name may set after a colon: ``lit:bitfit`` is
    # ``lit`` with ``preset: bitfit``, so one sweep can compare variants side by side.
    variant_field: ClassVar[str | None] = None
    # Place, colour and marker in the report (tunebench.display); a mapping per variant
    # for methods with variants. None: the report derives them from the name.
    display: ClassVar[Display | Mapping[str, Display] | None] = None

    def __init__(
        self, backbone: VisionLanguageBackbone, classes: ClassPrompts, config: MethodConfig
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.classes = classes
        self.config = config
        check_init(type(self), classes.init, type(self).__name__)
        backbone.requires_grad_(False)

    # ---- forward --------------------------------------------------------------------
    @abstractmethod
    def class_embeddings(self) -> torch.Tensor | None:
        """(C, D) L2-normalised class embeddings in the joint space (None if unused)."""

    def embed_images(self, trunk_features: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised joint-space embeddings of whole images, from trunk features."""
        return self.refine_image_embeddings(F.normalize(self.backbone.project_image(trunk_features), dim=-1))

    def refine_image_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The method's own image side: (N, D) L2-normalised joint-space embeddings in,
        the same out. Classification calls it on every image (through embed_images),
        detection on every region. The identity unless a method trains an image side
        (a CLIP-Adapter-style residual MLP): overriding this one hook serves both."""
        return embeddings

    def logit_scale(self) -> torch.Tensor:
        """CLIP's inverse softmax temperature, clamped at 100 as CLIP clamps it."""
        return self.backbone.logit_scale.exp().clamp(max=100.0)

    def head(self, image_embeddings: torch.Tensor, class_embeddings: torch.Tensor | None):
        return self.logit_scale() * image_embeddings @ class_embeddings.T

    def scorer(self) -> Scorer:
        """Logits over the classes the adapter was built for. The default encodes the
        class side once (``class_embeddings``) and scores every image against it;
        methods whose prompts depend on the image override this."""
        return self.score_with(self.class_embeddings())

    def score_with(self, class_embeddings: torch.Tensor | None) -> Scorer:
        """A scorer through ``head`` against fixed class embeddings."""
        return lambda image_embeddings: self.head(image_embeddings, class_embeddings)

    @abstractmethod
    def new_class_scorer(self, classes: ClassPrompts) -> Scorer | None:
        """A scorer over ``classes`` the method never trained on, made from their names
        alone (base-to-new generalisation); None when the method has no answer for
        classes it has not seen. Each method's docstring says what it does."""

    def forward(self, images: torch.Tensor, *, pixels: bool) -> torch.Tensor:
        """Logits (N, C) from pixels or from cached image-trunk features."""
        trunk = self.backbone.encode_image_trunk(images) if pixels else images
        image_embeddings = self.embed_images(trunk)
        return self.scorer()(image_embeddings)

    def train(self, mode: bool = True):
        """Only the method's own modules switch to training mode.

        The backbone stays in eval mode for every method: batch norms keep their
        pretrained statistics (few-shot batches are too small to estimate them) and
        dropout stays off, so a frozen encoder is the same function at every step and
        methods differ only in what they train, not in regularisation noise.
        """
        super().train(mode)
        self.backbone.eval()
        return self


def resolve_method(name: str, task: str | None = None) -> tuple[type, dict]:
    """``cones`` -> (Cones, {}); ``lit:bitfit`` -> (Lit, {"preset": "bitfit"}).

    ``task`` picks the class among the method's implementations (without one:
    ``fewshot-cls``), and the contract is checked (``check_contract``).
    """
    task = task or "fewshot-cls"
    base, _, variant = name.partition(":")
    method_cls = METHODS.for_task(base, task)
    check_contract(method_cls, task, base)
    if not variant:
        return method_cls, {}
    if method_cls.variant_field is None:
        raise ConfigError(f"method {base!r} has no variants: write {base!r} without ':{variant}'")
    return method_cls, {method_cls.variant_field: variant}


def check_contract(method_cls: type, task: str, name: str) -> None:
    """Refuse, in one line, a method whose overridden hooks ``task`` would ignore, or
    whose interface lacks a hook the task calls. A hook without a default (abstract)
    is required of every method, so only hooks with a default are compared: a
    subclass attribute that is not the interface's own is an override."""
    # The family's root (MethodAdapter, GenerationAdapter): the LAST class declaring HOOKS,
    # so a subclass that re-declares HOOKS cannot make its own overrides the baseline.
    interface = [c for c in method_cls.__mro__ if "HOOKS" in vars(c)][-1]
    calls = TASKS.get(task).hooks
    lacking = sorted(set(calls) - set(interface.HOOKS))
    if lacking:
        raise ConfigError(f"the {task} task calls {', '.join(lacking)}, which method {name!r} "
                          f"({interface.__name__}) has not: drop {task!r} from its tasks")
    for hook in interface.HOOKS:
        default = getattr(interface, hook)
        if hook in calls or getattr(default, "__isabstractmethod__", False):
            continue
        if getattr(method_cls, hook) is not default:
            called = ", ".join(sorted(calls)) or "no method hook"
            raise ConfigError(f"method {name!r} overrides {hook}(), which the {task} task never calls "
                              f"(it calls {called}): move that behaviour into a hook {task} calls, "
                              f"or drop {task!r} from {method_cls.__name__}.tasks")


def check_init(method_cls: type, init: str, name: str) -> None:
    """Refuse, in one line, a start (``RunConfig.init``) the method cannot express."""
    supported = getattr(method_cls, "inits", INITS)
    if init not in supported:
        raise ConfigError(f"method {name!r} can only start from init {' or '.join(supported)}, not {init!r}: "
                          f"set `init: {supported[0]}` in the sweep, or drop {name!r} from its methods")


def merge_variant(name: str, task: str | None, values: dict | None) -> tuple[type, dict]:
    """The method's class and ``values`` with its variant set: ``lit:bitfit`` with {} gives
    (Lit, {"preset": "bitfit"}). The one place a variant becomes a setting, so a RunConfig
    built in code, the CLI and a sweep run the same thing; a value that says otherwise
    is refused rather than silently overridden."""
    method_cls, variant = resolve_method(name, task)
    merged = dict(values or {})
    for key, value in variant.items():
        if key in merged and merged[key] != value:
            raise ConfigError(f"method {name!r} sets {key}={value!r} but method_config gives {merged[key]!r}")
    merged.update(variant)
    return method_cls, merged


def text_side_trains(adapter: nn.Module) -> bool:
    """True when the text encoder's output depends on anything that trains: a text-tower
    weight, or a part the method adds (LilT's bottlenecks hook the text blocks). When
    False, fixed prompts give the same pooled features every step."""
    if any(p.requires_grad for p in adapter.backbone.text_tower.parameters()):
        return True
    return any(p.requires_grad for n, p in adapter.named_parameters() if not n.startswith("backbone."))
