"""Recipes and the stage registry: ``slimfuse run recipe.yaml`` runs stages in order."""
