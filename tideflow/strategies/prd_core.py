"""The pieces of PRD (Asadi et al., ICML 2023) that the tideflow strategy and plain Avalanche code share.

`tideflow.strategies.prd.PrototypeDistillation` is the continual learner the engine runs; this
module holds what it is made of, so that the same method can be trained by Avalanche's own loop:

* `prd_network`: encoder, projection head and one prototype per class in one ``nn.Module``
  (`PRDNetwork`); `prd_optimiser`: the paper's two SGD parameter groups;
* `augment_views`, `supcon_loss`, `prototype_loss`, `relation_distillation`, `frozen_copy`: the
  views and the three losses (formulas in the strategy module's docstring);
* for Avalanche: `PRDPlugin` (a ``SupervisedPlugin`` that adds ``lambda_p L_p + lambda_d L_PRD``
  in ``before_backward`` and freezes the teacher in ``after_training_exp``) and `SupConCriterion`
  (the ``criterion`` that gives L_SC in training and a cross-entropy over the seen classes'
  cosines in evaluation, so that Avalanche's loss metrics have a number).

Plain Avalanche use (any ``SupervisedTemplate``; ``Naive`` is the plain loop)::

    net = prd_network(10, (1, 8, 8), augment="crop")
    strategy = Naive(model=net, optimizer=prd_optimiser(net), criterion=SupConCriterion(net),
                     plugins=[PRDPlugin()], train_mb_size=32, train_epochs=5)
    for experience in benchmark.train_stream:
        strategy.train(experience)

In evaluation mode the network returns each row's cosine to every prototype, classes it has
not trained on scored below any cosine, so Avalanche's accuracy (an argmax) is the
nearest-prototype rule over the seen classes (class-incremental).

Nothing here imports torch or Avalanche at import time: the pipeline driver imports the
strategies and must not pay for either (`tideflow.strategies.torch_core`).
"""

from __future__ import annotations

import copy
import functools
import math
from typing import TYPE_CHECKING, Any, Sequence

from tideflow.strategies import torch_core
from tideflow.strategies.base import SchemaError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch

__all__ = [
    "AUGMENTS",
    "PRDPlugin",
    "SupConCriterion",
    "augment_views",
    "dense_flops",
    "frozen_copy",
    "mlp_encoder",
    "prd_network",
    "prd_optimiser",
    "prototype_loss",
    "relation_distillation",
    "supcon_loss",
]

#: what ``augment`` takes; "auto" is crop+flip for images, noise for feature vectors
AUGMENTS = ("auto", "crop", "flip", "crop+flip", "noise", "none")
#: SupCon's reference temperature: the loss is scaled by tau / BASE_TAU (reference code)
BASE_TAU = 0.07
#: feature-vector augmentation: each input dropped with this probability, plus Gaussian noise
NOISE_DROP, NOISE_SIGMA = 0.1, 0.1


# -- the network -------------------------------------------------------------------------------
def mlp_encoder(input_shape: Sequence[int], widths: Sequence[int]) -> Any:
    """Flatten, then Linear + ReLU per width (the spec's 64-256-128 for digits: widths (256, 128)).

    The last layer keeps its ReLU: the paper's prototypes live in a ResNet's pooled, post-ReLU
    feature space, and this is the same kind of space.
    """
    from torch import nn

    layers: list[Any] = [nn.Flatten()]
    d = math.prod(input_shape)
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    return nn.Sequential(*layers)


@functools.cache
def _network_class() -> type:
    """`PRDNetwork`, defined on first use so that importing this module does not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PRDNetwork(nn.Module):
        """Encoder, projection head and one bias-free prototype row per class (module docstring).

        ``forward`` is for Avalanche's loop (`tideflow.strategies.prd_avalanche`): in train mode
        it augments ``x`` into ``views`` views and returns their normalised projections as
        ``(B, views * d_z)`` (view v of row i at ``[i, v*d_z:(v+1)*d_z]``), keeping the views and
        their encodings for the plugin's losses; in eval mode it returns the cosine of each row
        to every prototype, classes never trained scored ``UNSEEN`` (below any cosine, so that an
        argmax never picks them while a trained class is there).
        """

        UNSEEN = -2.0

        def __init__(self, encoder: Any, d: int, head: Sequence[int], n_classes: int, views: int,
                     augment: str, image: bool) -> None:
            super().__init__()
            self.encoder = encoder
            layers: list[Any] = []
            width = d
            for i, w in enumerate(head):
                layers.append(nn.Linear(width, w))
                if i < len(head) - 1:
                    layers.append(nn.ReLU())
                width = w
            self.head = nn.Sequential(*layers)
            self.prototypes = nn.Linear(d, n_classes, bias=False)
            self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))
            self.views, self.augment, self.image = views, augment, image
            self.generator: torch.Generator | None = None  # Avalanche use: set by prd_network
            self.last: tuple[Any, Any] | None = None  # (views, encodings) of the last training forward

        def project(self, h: Any) -> Any:
            return F.normalize(self.head(h), dim=1)

        def cosines(self, h: Any, classes: Any = None) -> Any:
            """cos(h_i, p_c): (rows, classes), all classes or the given class indices."""
            p = self.prototypes.weight if classes is None else self.prototypes.weight[classes]
            return F.normalize(h, dim=1) @ F.normalize(p, dim=1).T

        def forward(self, x: Any) -> Any:
            if self.training:
                assert self.generator is not None, "PRDNetwork.forward in train mode needs a generator"
                v = augment_views(x, self.views, self.augment, self.generator, image=self.image)
                h = self.encoder(v)
                self.last = (v, h)
                z = self.project(h)
                b = x.shape[0]
                return z.view(self.views, b, -1).transpose(0, 1).reshape(b, -1)
            scores = self.cosines(self.encoder(x))
            return scores.masked_fill(~self.seen, self.UNSEEN)

    return PRDNetwork


def prd_network(n_classes: int, input_shape: Sequence[int], *, encoder: Any = None,
                head: Sequence[int] = (128, 64), views: int = 2, augment: str = "auto",
                seed: int = 0) -> Any:
    """A `PRDNetwork` for inputs of ``input_shape`` (one row), weights drawn from ``seed``.

    ``encoder``: None (an MLP with widths (256, 128)), a tuple of MLP widths, or a callable
    ``input_shape -> nn.Module`` mapping ``(B, *input_shape)`` to ``(B, d)``. An input of rank 3
    ``(C, H, W)`` is an image (crop and flip apply); any other is a feature vector. The network
    gets an augmentation generator seeded from ``seed`` (for use in Avalanche's loop).
    """
    shape = tuple(int(s) for s in input_shape)
    image = len(shape) == 3
    augment = _resolve_augment(augment, image)
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")

    def make() -> Any:
        import torch

        enc = encoder(shape) if callable(encoder) else mlp_encoder(shape, encoder or (256, 128))
        enc.eval()
        with torch.no_grad():
            d = int(enc(torch.zeros((1, *shape))).reshape(1, -1).shape[1])
        return _network_class()(enc, d, tuple(head), n_classes, views, augment, image)

    net = torch_core.build(make, seed=torch_core.fit_seed(seed, 0))
    net.generator = torch_core.seeded_generator(torch_core.fit_seed(seed, 1))
    return net


def prd_optimiser(net: Any, *, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4,
                  prototype_lr: float | None = None) -> torch.optim.SGD:
    """The paper's optimiser: SGD with momentum and weight decay for encoder and head; the
    prototypes in a group of their own at ``prototype_lr`` (default ``lr``) without either."""
    import torch

    body = [p for name, p in net.named_parameters() if not name.startswith("prototypes.")]
    return torch.optim.SGD([
        {"params": body},
        {"params": list(net.prototypes.parameters()), "lr": lr if prototype_lr is None else prototype_lr,
         "momentum": 0.0, "weight_decay": 0.0},
    ], lr=lr, momentum=momentum, weight_decay=weight_decay)


def _resolve_augment(augment: str, image: bool) -> str:
    if augment not in AUGMENTS:
        raise ValueError(f"augment={augment!r}: use one of {AUGMENTS}")
    if augment == "auto":
        return "crop+flip" if image else "noise"
    if not image and augment in ("crop", "flip", "crop+flip"):
        raise SchemaError(f"augment={augment!r} needs an image input (one tensor column of shape (H, W) or "
                          "(C, H, W) per row); the input is a feature vector: use 'noise' or 'none'")
    return augment


# -- augmentation and losses -------------------------------------------------------------------
def augment_views(x: torch.Tensor, views: int, mode: str, generator: torch.Generator, *,
                  image: bool) -> torch.Tensor:
    """``views`` augmented copies of ``x`` stacked view-major: rows ``v*B .. (v+1)*B - 1`` are view v.

    Images ``(B, C, H, W)``: "crop" shifts each image by up to ``pad = max(1, round(H / 8))``
    pixels in each direction with zero fill (the paper's pad-4 crop of 32-pixel images);
    "flip" mirrors it left-right with probability 1/2. Any input, "noise": each value is
    zeroed with probability 0.1 and N(0, 0.1^2) is added (inputs standardised, so in units of
    a feature's spread). "none": plain copies. Every draw comes from ``generator`` (CPU), so
    views are the same on every device.
    """
    import torch
    import torch.nn.functional as F

    out = []
    n = x.shape[0]
    for _ in range(views):
        v = x
        if image and "crop" in mode:
            h, w = v.shape[-2:]
            pad = max(1, round(h / 8))
            padded = F.pad(v, (pad, pad, pad, pad))
            oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
            ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            chan = torch.arange(v.shape[1], device=x.device)[None, :, None, None]
            v = padded[torch.arange(n, device=x.device)[:, None, None, None], chan, rows, cols]
        if image and "flip" in mode:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            v = torch.where(flip[:, None, None, None], v.flip(-1), v)
        if mode == "noise":
            keep = (torch.rand(v.shape, generator=generator) >= NOISE_DROP).to(x.device)
            v = v * keep + NOISE_SIGMA * torch.randn(v.shape, generator=generator).to(x.device)
        out.append(v)
    return torch.cat(out)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor | None:
    """Supervised contrastive loss, "all" mode, over normalised projections ``z`` (N, d).

    Each row is an anchor; its positives are the other rows with its label, the denominator all
    other rows. Anchors without a positive are left out of the mean (None when no anchor has one).
    Scaled by ``tau / 0.07`` as in the reference code.
    """
    import torch

    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return None
    logits = (z @ z.T / tau).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mean_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[anchors] / n_pos[anchors]
    return -(tau / BASE_TAU) * mean_pos.mean()


def prototype_loss(net: Any, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean_i 1 - cos(p_{y_i}, stopgrad(h_i))``: the gradient reaches the labels' prototypes only."""
    import torch.nn.functional as F

    p = F.normalize(net.prototypes.weight[labels], dim=1)
    return (1.0 - (p * F.normalize(h.detach(), dim=1)).sum(1)).mean()


def relation_distillation(net: Any, h: torch.Tensor, teacher: Any, h_old: torch.Tensor, old: torch.Tensor,
                          tau_d: float) -> torch.Tensor:
    """``sum_{c in old} KL(q_c || p_c)`` over the samples axis (module docstring).

    ``teacher`` holds the frozen prototypes (``teacher.prototypes``), ``h_old`` the frozen
    encoder's encodings of the same views (no gradient); ``old``: class indices.
    """
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t = F.normalize(teacher.prototypes.weight[old], dim=1) @ F.normalize(h_old, dim=1).T
        log_q = F.log_softmax(t / tau_d, dim=1)
    log_p = F.log_softmax(net.cosines(h, old).T / tau_d, dim=1)
    return (log_q.exp() * (log_q - log_p)).sum()


def frozen_copy(net: Any) -> Any:
    """The teacher: a copy of ``net`` with no gradients, in eval mode."""
    teacher = copy.deepcopy(net)
    teacher.generator = None
    teacher.last = None
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def dense_flops(module: Any, shape: tuple[int, ...], device: Any) -> float:
    """Floating-point operations of one row's forward pass through ``module`` (torch's counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros((1, *shape), device=device))
    return float(counter.get_total_flops())


# -- Avalanche ---------------------------------------------------------------------------------
class SupConCriterion:
    """Avalanche's ``criterion`` for a `PRDNetwork`: L_SC on the views in training; in evaluation
    the cross-entropy of the cosines / ``tau`` (classes not trained are scored below any cosine),
    a loss for Avalanche's metrics only.

    The labels are the minibatch's (B); the training output holds every row's V views
    (`PRDNetwork` ``forward``). A minibatch without two rows of one class contributes 0 (the
    strategy's guard; counted in ``skipped``).
    """

    def __init__(self, net: Any, tau: float = 0.1) -> None:
        self.net = net
        self.tau = tau
        self.skipped = 0

    def __call__(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        if not self.net.training:
            return F.cross_entropy(output / self.tau, labels)
        b, views = labels.shape[0], self.net.views
        z = output.reshape(b, views, -1).transpose(0, 1).reshape(b * views, -1)
        loss = supcon_loss(z, labels.repeat(views), self.tau) if int(torch.bincount(labels).max()) >= 2 else None
        if loss is None:
            self.skipped += 1
            return output.sum() * 0.0
        return loss


@functools.cache
def _plugin_class() -> type:
    import torch
    from avalanche.core import SupervisedPlugin

    class _PRDPlugin(SupervisedPlugin):
        __doc__ = PRDPlugin.__doc__

        def __init__(self, lambda_p: float = 2.0, lambda_d: float = 4.0, tau_d: float = 0.1) -> None:
            super().__init__()
            self.lambda_p, self.lambda_d, self.tau_d = lambda_p, lambda_d, tau_d
            self.teacher: Any = None
            self.old: list[int] = []
            self.last_losses: dict[str, float] = {}  # the last step's L_p and L_PRD (inspection)

        def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            net = strategy.model
            if net.last is None:
                raise RuntimeError("PRDPlugin needs a PRDNetwork (prd_network) as the strategy's model")
            views, h = net.last
            labels = strategy.mb_y.repeat(net.views)
            with torch.no_grad():
                net.seen[strategy.mb_y] = True
            l_p = prototype_loss(net, h, labels)
            strategy.loss = strategy.loss + self.lambda_p * l_p
            self.last_losses = {"prototype": float(l_p)}
            if self.teacher is not None and self.old and self.lambda_d > 0:
                old = torch.tensor(self.old, dtype=torch.long, device=h.device)
                with torch.no_grad():
                    h_old = self.teacher.encoder(views)
                l_d = relation_distillation(net, h, self.teacher, h_old, old, self.tau_d)
                strategy.loss = strategy.loss + self.lambda_d * l_d
                self.last_losses["distillation"] = float(l_d)
            net.last = None

        def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            net = strategy.model
            self.teacher = frozen_copy(net)
            self.old = [int(c) for c in torch.nonzero(net.seen).flatten().tolist()]

    return _PRDPlugin


def PRDPlugin(lambda_p: float = 2.0, lambda_d: float = 4.0, tau_d: float = 0.1) -> Any:  # noqa: N802 - a class to its users
    """An Avalanche ``SupervisedPlugin`` adding PRD's prototype and distillation losses.

    For a ``SupervisedTemplate`` whose model is a `PRDNetwork` and whose criterion is
    `SupConCriterion`: ``before_backward`` marks the minibatch's classes as seen and adds
    ``lambda_p L_p`` (on the encodings of the views the forward pass kept) and, once a teacher
    exists, ``lambda_d L_PRD`` against it; ``after_training_exp`` freezes the model as the
    teacher (`frozen_copy`) of the classes seen so far. Its attributes ``teacher`` and ``old``
    are the state to save beside the model's.
    """
    return _plugin_class()(lambda_p=lambda_p, lambda_d=lambda_d, tau_d=tau_d)
