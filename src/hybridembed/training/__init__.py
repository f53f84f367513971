"""Training: the builder (recipe → one trainer → model folder), the trainer, the task sampler, stages, mlm, dry runs.

Modules: `builder` (prepare_training, run_training, training_arguments), `trainer` (HybridTrainer),
`sampling` (task-homogeneous batches), `stages` (run_recipe: the one entry for every recipe), `mlm`,
`stream_training`, `task_weighting`, `dryrun`, `model_card`. Nothing is imported here, so importing one
module does not import the others.
"""
