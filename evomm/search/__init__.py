"""Evolutionary search over merge recipes.

space        the genome <-> optimizer contract (SearchSpace, Evaluator)
ps_space     PS genome: per-layer-group method parameters -> a merge recipe
dfs_space    DFS genome: layer path + scales -> a DFS spec
optimizer    CMA-ES and random search (ask / tell, serialisable)
backends     in-process and Ray evaluation, failures turned into logged results
run          the checkpointed generation loop (resume after SIGKILL)
candidates   PS recipes / DFS specs materialised in memory for fitness functions
config       the `evomm evolve` YAML config (pydantic)
stages       runs a config's stages and writes their outputs (export, plots)

Fitness functions are a stage of their own: `evomm.fitness`.
"""
