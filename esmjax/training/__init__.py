"""The training loop (`trainer.train_and_evaluate`) and its parts, in the order of events.

trainer.py       the loop: validate, lock the workdir, build the run, restore or init, loop, save
dispatch.py      several steps per host dispatch (`train.steps_per_dispatch`): the plan and the
                 compiled program
train_log.py     the run's training rate, log windows, the log line and train record
checkpointing.py the checkpoint policy: restore on start, when to save
preemption.py    SIGTERM / SIGINT -> save and stop between steps
summary.py       `summary.json`
input_mode.py    the input mode of a run (`data.input_mode`): the grain stream or rows resident on
                 the devices, chosen by size and by what was measured faster
resident.py      the device-resident rows: loaded once, shuffled and gathered inside the dispatch
hooks.py         test-only hooks (poisoned batches, slow steps), injected by tests

The run object, the NaN guard, the workdir and the datasets a run reads are `esmjax.core`'s;
the evaluator and the metric files are `esmjax.evaluation`'s.

May import: everything below it (common, config, the domain packages, core, checkpoints,
evaluation); never serving or the command line.
"""
