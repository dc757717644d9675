"""The logic behind the routes: routes parse and look up, these classes do the work."""
