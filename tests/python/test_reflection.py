"""Server reflection (grpc.reflection.v1alpha): generic tools such as grpcurl can discover the API."""
import unittest

from nt_reflection import reflection_pb2
from nt_reflection import reflection_pb2_grpc

import server_fixture


class ReflectionTest(server_fixture.ServerTestCase):

  def _ask(self, **request):
    stub = reflection_pb2_grpc.ServerReflectionStub(self.conn.channel)
    responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]),
                                               timeout=10))
    self.assertEqual(len(responses), 1)
    return responses[0]

  def test_lists_the_kernel_health_and_reflection_services(self):
    names = {s.name for s in self._ask(list_services='').list_services_response.service}
    self.assertIn('nt.v1.KernelService', names)
    self.assertIn('grpc.health.v1.Health', names)
    self.assertIn('grpc.reflection.v1alpha.ServerReflection', names)

  def test_describes_the_protocol_files(self):
    r = self._ask(file_containing_symbol='nt.v1.KernelService')
    self.assertTrue(r.file_descriptor_response.file_descriptor_proto)
    r = self._ask(file_containing_symbol='nt.v1.Layer')
    self.assertTrue(r.file_descriptor_response.file_descriptor_proto)


if __name__ == '__main__':
  unittest.main()
