"""Shared by the task tests: a few plain optimizer steps on one batch, through the task's own loss."""
import torch


def train_losses(task, model, inputs, targets, steps: int, lr: float):
    """The loss of each of `steps` AdamW steps on one fixed batch (model in train mode)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = task.loss(model, inputs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
