"""jaxdeca.losses."""
