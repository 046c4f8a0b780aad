"""The blessing decision as a pure function: absolute thresholds and no regression."""

import dataclasses
from typing import List, Mapping, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When a model may be pushed.

    Attributes:
      min_bleu_4: lowest acceptable eval BLEU-4.
      max_loss: highest acceptable masked eval loss (nats per token).
      max_bleu_4_drop: how much lower than the latest blessed model's BLEU-4
        (on the same eval data) the candidate may score.
      max_loss_increase: how much higher than the latest blessed model's loss
        the candidate's may be.
    """

    min_bleu_4: float = 0.0
    max_loss: float = 50.0
    max_bleu_4_drop: float = 0.01
    max_loss_increase: float = 0.05

    def validate(self) -> 'Thresholds':
        if not 0.0 <= self.min_bleu_4 <= 1.0:
            raise ValueError(f'min_bleu_4 must be in [0, 1], got {self.min_bleu_4}.')
        if self.max_loss <= 0:
            raise ValueError(f'max_loss must be > 0, got {self.max_loss}.')
        if self.max_bleu_4_drop < 0 or self.max_loss_increase < 0:
            raise ValueError('Regression tolerances must be >= 0.')
        return self


def decide(
    metrics: Mapping[str, float],
    baseline: Optional[Mapping[str, float]],
    thresholds: Thresholds,
) -> Tuple[bool, List[str]]:
    """Whether to bless `metrics`; the reasons it fails (empty when blessed).

    Args:
      metrics: the candidate's eval metrics, with 'bleu_4' and 'loss'.
      baseline: the latest blessed model's metrics on the same data, or None
        for the first model (then only the absolute thresholds apply).
      thresholds: the gate.
    """
    failures = []
    bleu_4, loss = metrics['bleu_4'], metrics['loss']
    if bleu_4 < thresholds.min_bleu_4:
        failures.append(f'bleu_4 {bleu_4:.4f} < min_bleu_4 {thresholds.min_bleu_4:.4f}')
    if loss > thresholds.max_loss:
        failures.append(f'loss {loss:.4f} > max_loss {thresholds.max_loss:.4f}')
    if baseline is not None:
        if bleu_4 < baseline['bleu_4'] - thresholds.max_bleu_4_drop:
            failures.append(
                f'bleu_4 {bleu_4:.4f} regressed from the blessed {baseline["bleu_4"]:.4f} '
                f'by more than {thresholds.max_bleu_4_drop:.4f}'
            )
        if loss > baseline['loss'] + thresholds.max_loss_increase:
            failures.append(
                f'loss {loss:.4f} regressed from the blessed {baseline["loss"]:.4f} '
                f'by more than {thresholds.max_loss_increase:.4f}'
            )
    return not failures, failures
