"""gRPC servicer: converts protos, calls HistoryServing, records latency. No logic here."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from parlance.common.errors import ParlanceError
from parlance.history import convert, metrics
from parlance.history.serving import HistoryServing
from parlance.history.v1 import history_pb2, history_pb2_grpc

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _observed(method: F) -> F:
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = "OK"
        try:
            return await method(self, request, context)
        except ParlanceError as exc:
            code = exc.code.name
            raise
        except BaseException:
            code = "INTERNAL"
            raise
        finally:
            metrics.RPC_LATENCY.labels(name, code).observe(time.perf_counter() - start)

    return wrapper  # type: ignore[return-value]


class HistoryServicer(history_pb2_grpc.HistoryServiceServicer):
    def __init__(self, serving: HistoryServing) -> None:
        self.serving = serving

    @_observed
    async def CreateConversation(
        self, request: history_pb2.CreateConversationRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.CreateConversationResponse:
        record = await self.serving.create_conversation(
            request.user_id, request.conversation_id, request.title
        )
        return history_pb2.CreateConversationResponse(
            conversation=convert.conversation_to_proto(record)
        )

    @_observed
    async def GetConversation(
        self, request: history_pb2.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.GetConversationResponse:
        record, messages, intents = await self.serving.get_conversation(
            request.user_id,
            request.conversation_id,
            request.message_id if request.HasField("message_id") else None,
        )
        return history_pb2.GetConversationResponse(
            conversation=convert.conversation_to_proto(record, intents),
            messages=[convert.message_to_proto(m) for m in messages],
        )

    @_observed
    async def ListConversations(
        self, request: history_pb2.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.ListConversationsResponse:
        page = await self.serving.list_conversations(
            request.user_id,
            request.limit,
            request.cursor,
            request.include_archived,
            request.intent,
        )
        return history_pb2.ListConversationsResponse(
            conversations=[
                convert.conversation_to_proto(c, page.intents.get(c.id, ()))
                for c in page.conversations
            ],
            next_cursor=page.next_cursor,
        )

    @_observed
    async def UpdateConversation(
        self, request: history_pb2.UpdateConversationRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.UpdateConversationResponse:
        record, intents = await self.serving.update_conversation(
            request.user_id, request.conversation_id, convert.update_from_proto(request)
        )
        return history_pb2.UpdateConversationResponse(
            conversation=convert.conversation_to_proto(record, intents)
        )

    @_observed
    async def DeleteConversation(
        self, request: history_pb2.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.DeleteConversationResponse:
        await self.serving.delete_conversation(request.user_id, request.conversation_id)
        return history_pb2.DeleteConversationResponse()

    @_observed
    async def AppendMessages(
        self, request: history_pb2.AppendMessagesRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.AppendMessagesResponse:
        record, messages = await self.serving.append_messages(
            request.user_id,
            request.conversation_id,
            [convert.new_message_from_proto(m) for m in request.messages],
            create_if_missing=request.create_if_missing,
            title=request.title,
        )
        return history_pb2.AppendMessagesResponse(
            conversation=convert.conversation_to_proto(record),
            messages=[convert.message_to_proto(m) for m in messages],
        )

    @_observed
    async def PutFeedback(
        self, request: history_pb2.PutFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.PutFeedbackResponse:
        stored_at = await self.serving.put_feedback(
            request.user_id, convert.feedback_from_proto(request)
        )
        return history_pb2.PutFeedbackResponse(updated_at=convert.timestamp(stored_at))

    @_observed
    async def SearchMessages(
        self, request: history_pb2.SearchMessagesRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.SearchMessagesResponse:
        hits = await self.serving.search_messages(request.user_id, request.query, request.limit)
        return history_pb2.SearchMessagesResponse(
            hits=[convert.search_hit_to_proto(h) for h in hits]
        )

    @_observed
    async def RecordComparison(
        self, request: history_pb2.RecordComparisonRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.RecordComparisonResponse:
        comparison, conversation = await self.serving.record_comparison(
            request.user_id,
            request.conversation_id,
            request.chosen_message_id,
            request.rejected_message_id,
        )
        return history_pb2.RecordComparisonResponse(
            comparison=convert.comparison_to_proto(comparison),
            conversation=convert.conversation_to_proto(conversation),
        )

    @_observed
    async def PutImplicitFeedback(
        self, request: history_pb2.PutImplicitFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.PutImplicitFeedbackResponse:
        await self.serving.put_implicit_feedback(
            request.user_id, convert.implicit_feedback_from_proto(request)
        )
        return history_pb2.PutImplicitFeedbackResponse()

    @_observed
    async def GetModelReport(
        self, request: history_pb2.GetModelReportRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.GetModelReportResponse:
        found = await self.serving.model_report(convert.report_filter_from_proto(request))
        return convert.report_to_proto(found)

    async def ExportTrainingData(
        self, request: history_pb2.ExportTrainingDataRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[history_pb2.ExportTrainingDataResponse]:
        # A stream: _observed times awaitables, so this records its own latency and code.
        start = time.perf_counter()
        code = "OK"
        try:
            async for lines in self.serving.export_training_data(
                convert.export_filter_from_proto(request)
            ):
                yield history_pb2.ExportTrainingDataResponse(records=lines)
        except ParlanceError as exc:
            code = exc.code.name
            raise
        except BaseException:
            code = "CANCELLED_OR_INTERNAL"
            raise
        finally:
            metrics.RPC_LATENCY.labels("ExportTrainingData", code).observe(
                time.perf_counter() - start
            )
