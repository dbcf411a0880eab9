from agentfold.cli import main

main()
