from src.offline.synthetic.benchmark import main

main()
