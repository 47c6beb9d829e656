"""Work beyond one process: batch runs over a pool or a Ray cluster (:mod:`dspex.distributed.batch`),
optimizations driven by several processes with parallel trials (:mod:`dspex.distributed.optimize`) and
MIPROv2's candidate evaluations on a pool or Ray (:mod:`dspex.distributed.prompts`)."""
