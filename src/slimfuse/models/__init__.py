"""Models: the zoo, sources and specs, bundles (save / load), checked weights, structural edits."""
