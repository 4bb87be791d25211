from src.offline.garments.benchmark import main

main()
