print("pointsub")
