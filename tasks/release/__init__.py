"""The release stage: a registered version becomes a tested image in the registry and, at one fenced commit
point, the champion.

- ``build_context``, ``prune``, ``build``: the image's build context, the slimming of its environment, the build;
- ``engine`` (Docker client, step error, local images), ``container`` (run, health, remove), ``push`` (push and
  pull), ``registry_api`` (the registry's HTTP API: digests, retag, delete, token realms);
- ``smoke``: the running image answers its bundle's reference records as training scored them;
- ``candidate``: those steps composed into one tested image, known by digest;
- ``plan``, ``ledger``, ``converge``, ``history``: what a release means to do, its commit, the state after it;
- ``record``: the deploy gate and the release's words; ``github``: the GitHub release of a commit;
- ``lock``: the deploy lock that keeps two builds from overlapping (correctness is the commit point's fence).
"""
