"""Device placement: rank tables today; strategy tables, pipeline assignment and dry runs next."""
