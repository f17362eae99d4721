"""The client of the history service: one method per HistoryService RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from parlance.common.request_id import outgoing_metadata
from parlance.gateway.clients.channel import BaseClient, to_api_error
from parlance.gateway.metrics import DEPENDENCY_ERRORS
from parlance.history.v1 import history_pb2, history_pb2_grpc


class HistoryClient(BaseClient):
    dependency = "history"
    # Every history RPC is idempotent: reads, and writes keyed by client-supplied ids.
    idempotent = ("parlance.history.v1.HistoryService",)
    stub_class = history_pb2_grpc.HistoryServiceStub
    stub: history_pb2_grpc.HistoryServiceStub

    # One method per HistoryService RPC, typed by its request and response messages.

    async def create_conversation(
        self, request: history_pb2.CreateConversationRequest
    ) -> history_pb2.CreateConversationResponse:
        return await self._unary(self.stub.CreateConversation, request)

    async def get_conversation(
        self, request: history_pb2.GetConversationRequest
    ) -> history_pb2.GetConversationResponse:
        """The active branch, or with message_id the path from the root to that message."""
        return await self._unary(self.stub.GetConversation, request)

    async def list_conversations(
        self, request: history_pb2.ListConversationsRequest
    ) -> history_pb2.ListConversationsResponse:
        return await self._unary(self.stub.ListConversations, request)

    async def update_conversation(
        self, request: history_pb2.UpdateConversationRequest
    ) -> history_pb2.UpdateConversationResponse:
        return await self._unary(self.stub.UpdateConversation, request)

    async def delete_conversation(
        self, request: history_pb2.DeleteConversationRequest
    ) -> history_pb2.DeleteConversationResponse:
        return await self._unary(self.stub.DeleteConversation, request)

    async def append_messages(
        self, request: history_pb2.AppendMessagesRequest
    ) -> history_pb2.AppendMessagesResponse:
        return await self._unary(self.stub.AppendMessages, request)

    async def put_feedback(
        self, request: history_pb2.PutFeedbackRequest
    ) -> history_pb2.PutFeedbackResponse:
        return await self._unary(self.stub.PutFeedback, request)

    async def search_messages(
        self, request: history_pb2.SearchMessagesRequest
    ) -> history_pb2.SearchMessagesResponse:
        return await self._unary(self.stub.SearchMessages, request)

    async def record_comparison(
        self, request: history_pb2.RecordComparisonRequest
    ) -> history_pb2.RecordComparisonResponse:
        """The user's pick between two sibling answers; the chosen one's branch becomes active."""
        return await self._unary(self.stub.RecordComparison, request)

    async def put_implicit_feedback(
        self, request: history_pb2.PutImplicitFeedbackRequest
    ) -> history_pb2.PutImplicitFeedbackResponse:
        """A weak signal on an answer (kind "reask"), kept apart from the user's ratings."""
        return await self._unary(self.stub.PutImplicitFeedback, request)

    async def get_model_report(
        self, request: history_pb2.GetModelReportRequest
    ) -> history_pb2.GetModelReportResponse:
        """Admin: per model id, answers and feedback counts, and comparison outcomes."""
        return await self._unary(self.stub.GetModelReport, request)

    async def export_training_data(
        self, request: history_pb2.ExportTrainingDataRequest, timeout_s: float
    ) -> AsyncIterator[history_pb2.ExportTrainingDataResponse]:
        """Streams the export; closing the iterator cancels the call."""
        call = self.stub.ExportTrainingData(
            request, timeout=timeout_s, metadata=outgoing_metadata()
        )
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            DEPENDENCY_ERRORS.labels(self.dependency, exc.code().name).inc()
            raise to_api_error(exc, self.dependency, self.retry_after_s) from exc
        finally:
            call.cancel()
