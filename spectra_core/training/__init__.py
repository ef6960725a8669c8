"""Training: the plan becomes a peft model, trained on accelerate with resumable, pickle-free checkpoints.

Modules: :mod:`.modeling` (load base, build/load peft model), :mod:`.session` (the TrainingSession
gradient mergers and rebalancers see), :mod:`.optim` (param groups, LR schedule), :mod:`.loss`
(chunked cross-entropy), :mod:`.checkpoint`, :mod:`.metrics`, :mod:`.distributed`, :mod:`.trainer`.
"""
