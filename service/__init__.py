"""AlgoWays Store: the persistence service of the AlgoWays trading platform."""
