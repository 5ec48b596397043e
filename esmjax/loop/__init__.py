"""The parts of the training loop (`esmjax.trainer.train_and_evaluate` puts them in order).

workdir.py       the workdir a run owns: an OS lock held for the run's life, its schema file
data.py          the datasets, the number of steps, the training batch iterator
run.py           `Run`: mesh, components, shardings, the jitted init / train / predict steps
guard.py         the NaN guard: checked on the devices every step, read by the host at syncs
dispatch.py      several steps per host dispatch (`train.steps_per_dispatch`): the plan and the
                 compiled program
train_log.py     the run's training rate, log windows, the log line and train record
evaluator.py     periodic and final evaluation
checkpointing.py the checkpoint policy: restore on start, when to save
preemption.py    SIGTERM / SIGINT -> save and stop between steps
summary.py       `summary.json`
hooks.py         test-only hooks (poisoned batches, slow steps), injected by tests
"""
