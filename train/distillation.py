"""Distillation from a float teacher during fine-tuning: c·CE + w·T²·KL(teacher ‖ student) on the logits, c the SFT
cross-entropy's weight (1: the SFT loss plus the KL term; 0: the teacher's distributions alone).

The teacher (the bf16 fine-tune in `edgeqat study`, or the original model) runs without gradients in the
training dtype beside the student. The KL term is summed over the same predicted tokens as the cross-entropy
and divided by the same count (the tokens of the whole accumulated batch, as the Trainer passes it), so both
terms scale alike under gradient accumulation. The loss is TRL's SFTTrainer's own through a ``compute_loss``
override; nothing else of the training changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgeqat.errors import EdgeqatError

IGNORE = -100  # the label of positions with no loss (padding, prompts), as transformers and TRL mark them


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, weight: float,
                      temperature: float, num_items: int | torch.Tensor | None = None, ce_weight: float = 1.0):
    """(loss, cross-entropy, KL): the loss is ce_weight·CE(student, labels) + weight·T²·KL(softmax(t/T) ‖ softmax(s/T)),
    summed over the predicted tokens and divided by ``num_items`` (default: their count); the CE and KL
    returned, for the log, are this batch's means per token.

    ``labels`` are unshifted (position i predicts label i + 1), as for transformers' causal LMs.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE
    student = student_logits[:, :-1][mask].float()
    teacher = teacher_logits[:, :-1][mask].float()
    tokens = mask.sum().clamp(min=1)
    count = torch.as_tensor(tokens if num_items is None else num_items, device=student.device).clamp(min=1)
    ce = F.cross_entropy(student, targets[mask], reduction="sum")
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum()
    return (ce_weight * ce + weight * temperature**2 * kl) / count, ce.detach() / tokens, kl.detach() / tokens


def check_teacher(teacher_config, student_config, teacher: str) -> None:
    """The teacher must predict over the student's vocabulary."""
    if teacher_config.vocab_size != student_config.vocab_size:
        raise EdgeqatError(f"the teacher {teacher!r} has a vocabulary of {teacher_config.vocab_size} tokens and the "
                           f"model {student_config.vocab_size}: distillation needs the same tokenizer")


def distilling_trainer_class():
    from trl import SFTTrainer

    class DistillingSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss adds the teacher's KL term; ``teacher``, ``distill_weight``,
        ``distill_temperature`` and ``distill_ce_weight`` are set on the instance."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {**inputs, "use_cache": False}
            labels = inputs.pop("labels")
            outputs = model(**inputs)  # the full logits: TRL's fused head gives only the labels' log-probabilities
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
            loss, ce, kl = distillation_loss(outputs.logits, teacher_logits, labels, self.distill_weight,
                                             self.distill_temperature, num_items_in_batch, self.distill_ce_weight)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL's: DDP averages what the token count summed
            mode = "train" if model.training else "eval"
            self._metrics[mode]["cross_entropy"].append(self.accelerator.gather_for_metrics(ce).mean().item())
            self._metrics[mode]["distill_kl"].append(self.accelerator.gather_for_metrics(kl).mean().item())
            return (loss, outputs) if return_outputs else loss

    return DistillingSFTTrainer
