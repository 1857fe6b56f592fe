"""Tools that take a checkpoint and give numbers and pictures, without Ray: ``evaluate`` (the
paper's metrics with the baselines, per-timestep curves, inference time), ``predict`` (the
future of one video or frame folder) and ``analysis`` (memory addressing, Figure 7)."""
