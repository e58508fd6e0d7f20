"""The DANN objective (Ganin & Lempitsky 2015) for the one training engine: `objective: dann`.

    obj = build_objective("dann", feature_dim=1280, lambda_schedule="ganin")
    out = obj(model, (x_s, y_s), (x_t, y_t))   # y_t is never read

One step: the source and target images go through the feature extractor G_f together
(`model.forward_features`), the label predictor G_y (`model.head`) sees the source features only
(cross-entropy on the source labels), and the domain classifier G_d sees both through the gradient
reversal layer (binary cross-entropy, source = 1, target = 0):

    loss = CE(G_y(G_f(x_s)), y_s) + domain_weight * BCE(G_d(GRL_lambda(G_f(x_s, x_t))), d)

Both batches are cut to the same length (equal numbers of source and target images). Target labels
are never used: the objective does not even look at `target_batch[1]`.

lambda: ``lambda_schedule: ganin`` -> max_lambda * (2 / (1 + exp(-gamma * p)) - 1) with p the training
progress in [0, 1] (per step; the trainer tells the objective the epoch count via `on_epoch_start`
and, when it knows it, `steps_per_epoch`); a number -> that fixed lambda.
"""

from __future__ import annotations

import torch
from torch import nn

from bloodsmear.models.dann import DomainAdversarialLoss, DomainClassifier, dann_lambda
from bloodsmear.training.objectives import Objective, StepOutput, register_objective


@register_objective("dann")
class DANNObjective(Objective):
    needs_target = True

    def __init__(self, feature_dim: int, *, domain_hidden: int = 256, domain_layers: int = 2,
                 domain_dropout: float = 0.2, lambda_schedule: str | float = "ganin", gamma: float = 10.0,
                 max_lambda: float = 1.0, domain_weight: float = 1.0, label_smoothing: float = 0.0,
                 steps_per_epoch: int | None = None, **_ignored):
        super().__init__()
        self.domain_classifier = DomainClassifier(int(feature_dim), int(domain_hidden), n_hidden=int(domain_layers),
                                                  dropout=float(domain_dropout))
        self.adversarial = DomainAdversarialLoss(self.domain_classifier)
        if isinstance(lambda_schedule, str) and lambda_schedule != "ganin":
            try:
                lambda_schedule = float(lambda_schedule)
            except ValueError:
                raise ValueError(f"lambda_schedule must be 'ganin' or a number, got {lambda_schedule!r}") from None
        self.lambda_schedule = lambda_schedule
        self.gamma = float(gamma)
        self.max_lambda = float(max_lambda)
        self.domain_weight = float(domain_weight)
        self.label_smoothing = float(label_smoothing)
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.total_epochs = 1
        self._step_in_epoch = 0
        self._seen_steps_per_epoch: int | None = None

    # ---- schedule -------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        if self._step_in_epoch:
            self._seen_steps_per_epoch = self._step_in_epoch
        self.epoch, self.total_epochs = int(epoch), max(1, int(total_epochs))
        self._step_in_epoch = 0

    def progress(self) -> float:
        spe = self.steps_per_epoch or self._seen_steps_per_epoch
        frac = min(self._step_in_epoch / spe, 1.0) if spe else 0.0
        return min((self.epoch + frac) / self.total_epochs, 1.0)

    def current_lambda(self) -> float:
        if isinstance(self.lambda_schedule, (int, float)):
            return float(self.lambda_schedule)
        return dann_lambda(self.progress(), gamma=self.gamma, max_value=self.max_lambda)

    # ---- one step ---------------------------------------------------------------------------------
    def forward(self, model: nn.Module, batch, target_batch=None) -> StepOutput:
        if target_batch is None:
            raise ValueError("the dann objective needs a target-domain loader (unlabelled target images)")
        x_s, y_s = batch
        x_t = target_batch[0]  # target labels are never read
        n = min(len(x_s), len(x_t))
        x_s, y_s, x_t = x_s[:n], y_s[:n], x_t[:n]
        lam = self.current_lambda()
        self.adversarial.coeff = lam
        f = model.forward_features(torch.cat([x_s, x_t], dim=0))
        f_s, f_t = f[:n], f[n:]
        logits = model.head(f_s)
        label_loss = nn.functional.cross_entropy(logits, y_s, label_smoothing=self.label_smoothing)
        dom = self.adversarial(f_s, f_t)
        loss = label_loss + self.domain_weight * dom.loss
        if self.training:
            self._step_in_epoch += 1
        logs = {"loss": float(loss.detach()), "label_loss": float(label_loss.detach()),
                "domain_loss": float(dom.loss.detach()), "domain_acc": dom.accuracy, "lambda": lam}
        return StepOutput(loss=loss, logs=logs, logits=logits.detach(), targets=y_s)


__all__ = ["DANNObjective"]
