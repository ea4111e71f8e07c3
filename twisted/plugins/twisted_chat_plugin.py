from twisted.application.service import ServiceMaker

chat = ServiceMaker(
    "twisted-chat", "twisted_chat.tap", "A real-time chat server (line protocol).", "chat"
)
