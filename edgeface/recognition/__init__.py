"""Who is this face: embedding distances, the tracker, the per-track decider and the online clusters
of unknown faces. No I/O."""
