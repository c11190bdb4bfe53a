"""In-context linear regression (Garg et al. 2022; Akyurek et al. 2023), scored against least squares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from seqmix.data.synthetic.base import EvalSetting, SyntheticTask, TaskBatch, TaskConfig

__all__ = ["ICLRegressionConfig", "ICLRegression", "least_squares_predictions"]

SCORED = ("all", "last")


@dataclass
class ICLRegressionConfig(TaskConfig):
    """Per sequence a fresh w ~ N(0, I_d); examples x_i ~ N(0, I_d), y_i = w . x_i + noise."""

    _task: ClassVar[str] = "icl_regression"
    n_dims: int = 8  # d, the dimension of x and w (Garg et al.: 20)
    n_points: int = 24  # examples per training sequence (Garg et al.: 2d + 1); the last one is a query only
    noise_std: float = 0.0  # standard deviation of the Gaussian noise added to y
    scored: str = "all"  # "all": predict y_i at every x_i; "last": only at the final x
    eval_examples: Optional[tuple] = None  # held-out settings: k examples before one scored query; None = (d/2, d, 2d, n_points - 1, 2 n_points - 1)

    def __post_init__(self) -> None:
        self._int("n_dims")
        self._int("n_points")
        self._float("noise_std", 0.0)
        self._choice("scored", SCORED)
        self._ints("eval_examples", 0, optional=True, nonempty=True)


def least_squares_predictions(inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Ordinary least squares on the examples before each scored x token: predictions [B, T] (float64).

    ``inputs`` [B, T, d + 1] in the task's layout (x_i at position 2i, y_i at 2i + 1). With fewer
    examples than d the system is underdetermined and the minimum-norm solution (the pseudo-inverse)
    is used -- the estimator the Bayes-optimal ridge tends to as its prior variance grows; with no
    example it predicts 0. Positions outside ``mask`` are 0.
    """
    B, T, width = inputs.shape
    d = width - 1
    x = inputs[:, 0::2, :d].double()  # [B, n, d]
    y = inputs[:, 1::2, d].double()  # [B, n - 1]
    out = torch.zeros(B, T, dtype=torch.float64, device=inputs.device)  # [B, T]
    b, t = mask.nonzero(as_tuple=True)  # the scored x tokens
    if y.shape[1] == 0 or b.numel() == 0:
        return out
    i = t // 2  # examples before each query
    keep = (torch.arange(y.shape[1], device=inputs.device) < i[:, None]).double()  # [Q, n - 1]
    design = x[b, : y.shape[1]] * keep[..., None]  # [Q, n - 1, d]; zero rows leave the min-norm solution unchanged
    w = (torch.linalg.pinv(design) @ (y[b] * keep)[..., None])[..., 0]  # [Q, d]
    out[b, t] = (w * x[b, i]).sum(-1)
    return out


class ICLRegression(SyntheticTask):
    """Kind "vectors". Layout (tokens of width d + 1): x_1, y_1, x_2, y_2, ..., x_n, with
    x-token ``[x_i, 0]`` at position 2i and y-token ``[0_d, y_i]`` at position 2i + 1 (T = 2n - 1).
    The model predicts y_i (d_out = 1) at x_i's token, before seeing y_i.

    Primary metric ``relative_mse`` = model MSE / zero-predictor MSE (mean y^2 over the scored
    positions: 1 means no better than predicting 0, the chance level; Garg et al. normalise by d, its
    expectation). ``score`` also gives ``least_squares_relative_mse`` (ordinary least squares on each
    query's preceding examples, min-norm below d examples) on the same scale, and the raw MSEs.
    """

    name = "icl_regression"
    kind = "vectors"
    primary_metric = "relative_mse"
    higher_is_better = False
    source = "Garg et al. 2022; Akyurek et al. 2023"
    summary = "predict y = w.x in context; error relative to predicting 0, vs. least squares"
    config_class = ICLRegressionConfig
    fixed_fields = ("n_dims",)

    def __init__(self, config: Any = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.d_in = self.config.n_dims + 1
        self.d_out = 1

    @property
    def vocab_size(self) -> int:
        return 0

    @property
    def chance(self) -> float:
        return 1.0  # the zero predictor's relative MSE

    def seq_len(self, config: Optional[ICLRegressionConfig] = None) -> int:
        return 2 * (config or self.config).n_points - 1

    def eval_settings(self) -> list[EvalSetting]:
        d, n = self.config.n_dims, self.config.n_points
        ks = self.config.eval_examples or sorted({d // 2, d, 2 * d, n - 1, 2 * n - 1})
        return [EvalSetting(f"k={k}", {"n_points": k + 1, "scored": "last"}, float(k)) for k in ks]

    def _draw(self, cfg: ICLRegressionConfig, batch_size: int, gen: torch.Generator, split: str) -> TaskBatch:
        B, d, n = batch_size, cfg.n_dims, cfg.n_points
        T = 2 * n - 1
        w = torch.randn(B, d, generator=gen)  # [B, d]
        x = torch.randn(B, n, d, generator=gen)  # [B, n, d]
        y = (x @ w[:, :, None])[..., 0]  # [B, n]
        if cfg.noise_std > 0:
            y = y + cfg.noise_std * torch.randn(B, n, generator=gen)
        inputs = torch.zeros(B, T, d + 1)  # [B, T, d + 1]
        inputs[:, 0::2, :d] = x
        inputs[:, 1::2, d] = y[:, :-1]
        targets = torch.zeros(B, T, 1)  # [B, T, 1]
        targets[:, 0::2, 0] = y
        mask = torch.zeros(B, T, dtype=torch.bool)  # [B, T]
        if cfg.scored == "all":
            mask[:, 0::2] = True
        else:
            mask[:, -1] = True
        return TaskBatch(inputs, targets, mask, {"seq_len": T, "length": n, "n_points": n, "w": w})

    def loss(self, output: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """Mean squared error over the scored positions; ``output`` holds predictions [B, T, 1]."""
        self._check_output(output, batch)
        mask = batch.mask.to(output.device)
        return ((output.float() - batch.targets.to(output.device)) ** 2).sum(-1)[mask].mean()

    @torch.no_grad()
    def score(self, output: torch.Tensor, batch: TaskBatch) -> dict[str, float]:
        self._check_output(output, batch)
        mask = batch.mask.to(output.device)
        y = batch.targets.to(output.device)[..., 0].double()  # [B, T]
        model = ((output[..., 0].double() - y) ** 2)[mask].mean()
        ls = ((least_squares_predictions(batch.inputs.to(output.device), mask) - y) ** 2)[mask].mean()
        zero = (y ** 2)[mask].mean()
        return {
            "relative_mse": (model / zero).item(),
            "least_squares_relative_mse": (ls / zero).item(),
            "mse": model.item(),
            "least_squares_mse": ls.item(),
            "zero_mse": zero.item(),
            "loss": model.item(),
        }
