"""Pure stage functions over tables and arrays. Stages never import prefect."""
