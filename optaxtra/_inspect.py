"""Reading the values an update used from an Optax state (in progress)."""


def inspect(state):
  raise NotImplementedError("optaxtra.inspect is being written (issue 5)")
