"""`harken watch --web`: the fleet as a live web page (docs/watch.md "The web page")."""
