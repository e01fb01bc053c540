"""Frozen CLIP plus prompt learners: plain nn.Modules, no Lightning, no logging."""
