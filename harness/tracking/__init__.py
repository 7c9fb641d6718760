"""Where users already look: TensorBoard logs written while a run trains, and an export of the
results database to MLflow.

``scalars`` names every value once, so TensorBoard's tags and MLflow's metric keys are the same
names for the same numbers; ``tensorboard`` is a training-loop hook; ``mlflow_export`` reads a
``Store`` and writes runs and ablations to an MLflow tracking server. Both third-party packages
are optional extras and imported only when used.
"""
