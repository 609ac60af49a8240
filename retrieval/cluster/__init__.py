"""Past one machine, on Ray (the `ray` extra): the only package that imports it."""
