"""The method registry: one entry per evaluated method, read by every consumer.

The Snakemake rules (which rule makes a method's adapter, which cells it has), the stage
scripts, the report (labels, order, comparisons), the sample figure, the config check and
the privacy-DAG test all ask this registry; nothing else lists methods. Adding a method is
one :func:`register` call here plus its fitting code (and a rule, if no existing producer
fits).

Privacy classes (``Method.privacy``):

``dp_release``   post-processing of the DP-DeepSets release of the private set (one
                 analytic-Gaussian release per set, epsilon and seed; ``release_embedding``).
                 Its finite-epsilon cells are DP; with ``privacy.nonprivate_reference`` it
                 also has a noise-free epsilon = inf cell, a NON-private reference.
``dp_sgd``       a LoRA fitted on the private set with DP-SGD (opacus per-sample gradients,
                 the privacy module's accountant); DP at every finite epsilon of the grid.
``dp_samples``   synthetic samples made directly from the private set by a mechanism with
                 its own Gaussian accounting and no adapter (Private Evolution: T noisy vote
                 histograms, composed as Gaussian DP); DP at every finite epsilon of the grid.
                 A class of its own because neither of the two above fits: it does not
                 post-process the DP-DeepSets release, and it fits no LoRA.
``public_only``  uses no private data at all (epsilon = 0): one cell per seed, scored
                 against every private set.
``nonprivate``   fitted on the private set without noise: a NON-private reference
                 (epsilon = inf), never in a released figure.

Producers (``Method.producer``): the rule family that writes the method's adapters.
``generate`` (rule generate_lora: a release or the public bank -> adapter, post-processing),
``fit_baseline`` (rule fit_baseline: gradient-based fit on the private set; rule
fit_nonprivate for the non-private one), ``evolve`` (rule private_evolution: the samples
themselves, no adapter), or None (no adapter: the base model).
"""

from __future__ import annotations

from dataclasses import dataclass

PRIVACY_CLASSES = ("dp_release", "dp_sgd", "dp_samples", "public_only", "nonprivate")
PRODUCERS = ("generate", "fit_baseline", "evolve", None)


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # in figures and tables
    privacy: str  # one of PRIVACY_CLASSES
    producer: str | None  # one of PRODUCERS
    description: str
    public_start: bool = False  # a gradient fit that starts from the public-pool LoRA
    public_gradient: bool = False  # a gradient fit that also reads the public pool each step
    needs_hypernet: bool = False  # its generator maps the release with the hypernetwork
    needs_bank: bool = False  # its generator reads the public LoRA bank
    needs_subset_means: bool = False  # ... and the public subsets' clipped mean embeddings
    bank_recipe: bool = False  # a non-private fit with the LoRA bank's own recipe (lora.*), untuned
    in_figure: bool = True  # a column of the released sample figure (DP / public cells only)

    @property
    def per_set(self) -> bool:
        """One adapter per private set (False: one for all sets, scored against each)."""
        return self.privacy != "public_only"

    @property
    def has_grid(self) -> bool:
        """Cells at every finite epsilon of ``privacy.epsilons``."""
        return self.privacy in ("dp_release", "dp_sgd", "dp_samples")

    def epsilons(self, finite: list[str], nonprivate_reference: bool) -> list[str]:
        """The epsilon cells (wildcard spellings) of this method."""
        if self.privacy == "dp_release":
            return finite + (["inf"] if nonprivate_reference else [])
        if self.privacy in ("dp_sgd", "dp_samples"):
            return list(finite)
        if self.privacy == "public_only":
            return ["0"]
        return ["inf"]


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (its name must be new); returns it."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.privacy not in PRIVACY_CLASSES:
        raise ValueError(f"{method.name}: privacy must be one of {PRIVACY_CLASSES}, got {method.privacy!r}")
    if method.producer not in PRODUCERS:
        raise ValueError(f"{method.name}: producer must be one of {PRODUCERS}, got {method.producer!r}")
    if method.privacy == "nonprivate" and method.in_figure:
        raise ValueError(f"{method.name}: a non-private method cannot be in the released figure")
    REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(REGISTRY)}") from None


def names(*, privacy: str | None = None, producer: str | None = "any") -> list[str]:
    """Registered names in figure order, optionally of one privacy class / producer."""
    return [m.name for m in REGISTRY.values()
            if (privacy is None or m.privacy == privacy) and (producer == "any" or m.producer == producer)]


register(Method(
    "dpdeepsets", "DP-DeepSets", "dp_release", "generate", needs_hypernet=True, needs_bank=True,
    description="the hypernetwork maps the noisy release of the set's clipped mean embedding "
                "to a LoRA (the method of the paper)"))
register(Method(
    "nearest_public_lora", "nearest public LoRA", "dp_release", "generate", needs_bank=True,
    needs_subset_means=True,
    description="ablation: the same release mapped to the public LoRA whose subset's clipped "
                "mean embedding is nearest (post-processing, no hypernetwork)"))
register(Method(
    "dpsgd", "DP-SGD", "dp_sgd", "fit_baseline",
    description="LoRA fitted on the private set with DP-SGD from B = 0"))
register(Method(
    "public_ft_dpsgd", "public FT + DP-SGD", "dp_sgd", "fit_baseline", public_start=True,
    description="DP-SGD started from the LoRA fitted on the public pool"))
register(Method(
    "pda_dpmd", "PDA-DPMD", "dp_sgd", "fit_baseline", public_start=True, public_gradient=True,
    description="public-data-assisted mirror descent (Amid et al. 2022) from the public-pool LoRA"))
register(Method(
    "private_evolution", "Private Evolution", "dp_samples", "evolve",
    description="training-free peer (Lin et al. 2024): the base model's samples, evolved by "
                "noisy nearest-neighbour votes of the private set (DDIM random API, SDEdit "
                "variation API, no adapter)"))
register(Method(
    "mean_public_lora", "mean public LoRA", "public_only", "generate", needs_bank=True,
    description="ablation: the average of the public LoRA bank (no private data, epsilon = 0)"))
register(Method(
    "base", "base model", "public_only", None,
    description="the base model without LoRA (no private data, epsilon = 0)"))
register(Method(
    "nonprivate", "non-private LoRA", "nonprivate", "fit_baseline", in_figure=False,
    description="LoRA fitted on the private set by the DP-SGD loop without clipping or noise, "
                "tuned on the public proxies like the DP methods (NOT private; the ceiling)"))
register(Method(
    "bank_recipe_lora", "bank-recipe LoRA", "nonprivate", "fit_baseline", in_figure=False,
    bank_recipe=True,
    description="LoRA fitted on the private set with the public bank's own recipe (lora.*): "
                "the fit the hypernetwork is trained to imitate (NOT private; a reference)"))
