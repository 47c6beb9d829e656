"""Work beyond one process: batch runs over a pool or a Ray cluster (:mod:`dspex.distributed.batch`)."""
