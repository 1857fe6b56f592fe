"""Experiments made of training runs (Ray): ``sweep`` (Ray Tune over memory slots, clip lengths
and the learning rate, each trial one ``lmc.train`` run), ``ablation`` (the paper's Table 4:
no memory / global query / local query at the same budget) and ``cli`` (their command lines)."""
